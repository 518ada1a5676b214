"""The ``featureviz`` command: one module per subcommand over one model-loading path
(:mod:`~torch_featureviz.cli.loading`), then the library.

Commands::

    featureviz info MODEL       the Extractor summary and a table of every conv layer
    featureviz filters MODEL    filter grids as figures (--out) and/or TensorBoard logs (--logdir)
    featureviz maps MODEL       feature maps of an image, hook mode, chain mode or both compared
    featureviz examples MODEL   each channel's top-k dataset examples from a folder of images
    featureviz demo ...         the built-in training demo (torch_featureviz.demo)
    featureviz bench ...        the capture benchmark (benchmarks.bench_capture, source checkout)

MODEL is a torchvision model name (``featureviz info resnet50``), ``timm:NAME`` (``timm:resnet18``,
needs the ``timm`` extra) or ``hf:CLASS`` (``hf:ResNetModel``, needs the ``hf`` extra; ``--config
FILE.json`` for a config other than the class's default); ``--model-class module:Class`` builds
your own model instead. ``--weights`` (downloaded) or ``--checkpoint`` (a state dict) set the
weights; otherwise they are random and nothing is downloaded, detection backbones included.

The input is built from the image, never from what the first conv seems to expect: 3 channels
(RGB) unless ``--input-channels N`` says otherwise (1: grayscale; other N: the RGB channels
repeated, channel i being colour i % 3, or cut). Only the model's forward decides whether it
fits; when it does not, the error says what failed and, if the size or the channels are the
problem, which option to change.

Exit codes:

- 0: success.
- 1: an unexpected internal error (one line; ``--traceback`` shows where it happened).
- 2: bad input: a usage error, a missing, unreadable, non-image, oversized or truncated image, an
  unknown model, class or weights name, a missing optional extra (timm, transformers), a model
  that cannot be built, weights that cannot be downloaded, a checkpoint that is not a state dict
  or whose keys do not match, a layer pattern that matches nothing, an output directory that
  cannot be written, a model whose forward fails on the input.
- 130: interrupted (Ctrl-C).

Every error is one line on stderr, never a traceback (unless ``--traceback``). ``--quiet``
silences everything but errors; otherwise a progress bar runs on stderr across layers.
"""

from torch_featureviz.cli.app import COMMANDS, build_parser, main
from torch_featureviz.cli.bench import load_benchmark

__all__ = ["COMMANDS", "build_parser", "load_benchmark", "main"]
