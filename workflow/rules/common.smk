# The study, loaded once when the workflow is parsed (fpt_core/study.py): the same cells, packs
# and paths as `fpt plan` and `fpt status` see for this config. Only names live here; the rules
# are in the other files.

import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from fpt_core.errors import ConfigError
from fpt_core.study import Study

try:
    STUDY = Study.from_config(config, files=workflow.configfiles)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


def regex_of(names):
    """A wildcard constraint that matches exactly `names` (none: nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"
