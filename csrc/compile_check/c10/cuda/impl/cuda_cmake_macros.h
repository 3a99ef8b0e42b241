// Stand-in for a header that CUDA builds of torch generate and CPU wheels do not ship. It is on the
// include path only of the compile-only check of the CUDA sources against a CPU build of torch (CI);
// real CUDA builds use torch's own copy. c10 is a shared library in every torch wheel.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
