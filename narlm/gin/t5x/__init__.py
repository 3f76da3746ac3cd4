# narlm gin configs for running narlm models under t5x (see docs/t5x.md).
# This file only makes `narlm/gin/t5x/` a regular package, so gin's package
# resource reader resolves `include 'narlm/gin/t5x/...'` from any cwd. No code:
# narlm does not import t5x.
