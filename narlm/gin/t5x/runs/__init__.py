# narlm's t5x run gins (layered on t5x/configs/runs/*.gin). This file only
# makes the folder a regular package for gin's resource reader; no code.
