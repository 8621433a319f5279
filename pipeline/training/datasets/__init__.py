"""Dataset readers: real Sentinel-2 L1C scenes for distillation, CloudSEN12+ (TACO), L8Biome."""
