"""identity-pipeline: product telemetry in, one trustworthy customer identity per person out."""
