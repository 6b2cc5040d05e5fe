"""Text-to-video and image-to-video pipelines: prompt (and image) in, video frames out."""
