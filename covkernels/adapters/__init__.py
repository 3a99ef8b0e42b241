"""Adapters to other sampler stacks: ``diffusers`` (VP UNets + scheduler configs -> sigma-space denoisers)
and ``k_diffusion`` (a sampler-name table in k-diffusion's shape). Each imports its library lazily."""
