"""Seeing: frames from a source, faces found in them, each face classified (source -> detect -> classify)."""
