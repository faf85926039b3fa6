"""Ray orchestration: trainer construction, failure/resume policy, checkpoint hand-off."""
