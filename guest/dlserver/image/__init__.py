"""Image codecs and operations, on planar float32 CHW images."""
