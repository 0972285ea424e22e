"""Annotation stages of the ingest graph: vision and audio captioners, Whisper subtitles, LLM fusion.

Not built yet: the ingest graph registers stages by name (``vast.pipeline.stage.STAGES``) and these
plug in there.
"""
