"""A pytest plugin for ``tools/mutation.py`` (loaded with ``-p``; not a test helper).

mutmut forks one process per mutant from a server that has collected the tests. What the tests import lazily, at
run time, is then imported again in every mutant's process: ``torch._dynamo`` (pulled in by the Trainer, accelerate
and FlopCounterMode) alone takes ~1.6 s, more than most mutants' tests. Importing it here, once in the server, saves
that per mutant.
"""

import accelerate  # noqa: F401
import torch._dynamo  # noqa: F401
import transformers.trainer  # noqa: F401
