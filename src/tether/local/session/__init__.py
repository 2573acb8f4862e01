"""A session with an agent (target, Job, tunnel) and the progress lines printed meanwhile."""
