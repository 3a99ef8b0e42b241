"""Adapters to other model conventions and sampler stacks, each importing its library lazily:

- ``flow``: rectified-flow / x-prediction networks (velocity, x0 or epsilon; noise at t = 1 or t = 0) as
  sigma-space denoisers (:class:`~covkernels.adapters.flow.FlowDenoiser`), flow time grids and shifts, and
  ``sample_flow`` (the exact step from pure noise);
- ``diffusers``: VP UNets and flow transformers with their scheduler configs -> sigma-space denoisers,
  scheduler sigmas, and a one-call ``sample(pipe, ...)``;
- ``guards``: the warnings given before a covariance sampler runs on a host's model (latent models, a
  covariance window that covers few steps);
- ``k_diffusion``: a sampler-name table in k-diffusion's shape.
"""
