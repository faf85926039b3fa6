"""Shards: synthetic 3D generation, image-folder import, inspection and the streaming reader."""
