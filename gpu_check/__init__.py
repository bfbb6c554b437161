"""gpu-check: the one command to run when a GPU is lent (`make gpu-check`); see gpu_check.main."""
