"""Exit codes shared by every command of the image (DESIGN.md; sysexits.h names)."""

EX_OK = 0  # clean stop
EX_USAGE = 64  # a command line that does not parse
EX_DATAERR = 65  # an applied migration file changed
EX_UNAVAILABLE = 69  # a dependency stayed unreachable (database wait, LiveKit retries)
EX_SOFTWARE = 70  # internal error
EX_CONFIG = 78  # invalid configuration: every problem listed
