"""Annotation stages of the ingest graph, each a batched ``ModelStage`` run on Ray actors.

``vision.py`` (VAST ``cap%tv`` captioner), ``audio.py`` (VAST ``cap%ta``), ``subtitles.py``
(Whisper, openai-whisper or faster-whisper backends, each equal to its library's ``transcribe``),
``fusion.py`` (the LLM omni-caption, prompt templates in ``configs/prompts/``); ``base.py`` is what
they share (batching, split-and-retry, needed modalities, provenance and input digests); ``hub.py``
resolves model references (hub ids, ``models pull``); ``tiny.py``/``tiny_lm.py`` write the tiny
random-weight models the demo and the tests load.
"""
