/* Runs a tilefuse GPU bundle with one dynamic size through NAME_run_dyn against the test double of the CUDA
 * driver (fake_libcuda.c: it logs launches, runs nothing); built by tests/test_export_gpu_dynamic.py with
 * BUNDLE_H and PREFIX set. Usage: gpu_run_dyn SIZE... It calls NAME_run once ("run static" in the driver's
 * log, $FAKE_CUDA_LOG), then for each size writes "run T=SIZE" into the log and calls NAME_run_dyn with
 * made-up device pointers (input i at
 * 0x1000000 * (i + 1), output j at 0x100000000 * (j + 1), the workspace at 0x7000000000) and prints
 * `size=S rc=R wsrc=R workspace=W error=MESSAGE`, one line each; then the first size once more with a NULL
 * workspace (`null_workspace=R error=MESSAGE`). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include BUNDLE_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define API(fn) CAT(PREFIX, fn)

int main(int argc, char** argv) {
  char err[512] = "";
  CAT(PREFIX, _handle)* h = NULL;
  const void* inputs[64];
  void* outputs[64];
  int i;
  CUresult rc = API(_load)(NULL, &h, err, sizeof(err));
  printf("load=%d arch=%s message=%s\n", (int)rc, rc == CUDA_SUCCESS ? API(_arch)(h, NULL) : "-", err);
  if (rc != CUDA_SUCCESS) return 1;
  for (i = 0; i < 64; ++i) {
    inputs[i] = (const void*)(uintptr_t)(0x1000000ULL * (uint64_t)(i + 1));
    outputs[i] = (void*)(uintptr_t)(0x100000000ULL * (uint64_t)(i + 1));
  }
  {
    FILE* log = fopen(getenv("FAKE_CUDA_LOG"), "a");
    fprintf(log, "run static\n");
    fclose(log);
  }
  rc = API(_run)(h, NULL, inputs, outputs, (void*)(uintptr_t)0x7000000000ULL);
  printf("static_run=%d error=%s\n", (int)rc, API(_error)(h));
  for (i = 1; i < argc; ++i) {
    int64_t sizes[1];
    size_t ws = 0;
    CUresult wrc;
    FILE* log = fopen(getenv("FAKE_CUDA_LOG"), "a");
    sizes[0] = strtoll(argv[i], NULL, 10);
    fprintf(log, "run T=%lld\n", (long long)sizes[0]);
    fclose(log);
    wrc = API(_workspace_bytes_dyn)(sizes, &ws);
    rc = API(_run_dyn)(h, sizes, NULL, inputs, outputs, ws ? (void*)(uintptr_t)0x7000000000ULL : NULL);
    printf("size=%lld rc=%d wsrc=%d workspace=%zu error=%s\n", (long long)sizes[0], (int)rc, (int)wrc, ws,
           API(_error)(h));
  }
  if (argc > 1) { /* the first size again, without the workspace it needs */
    int64_t sizes[1];
    sizes[0] = strtoll(argv[1], NULL, 10);
    rc = API(_run_dyn)(h, sizes, NULL, inputs, outputs, NULL);
    printf("null_workspace=%d error=%s\n", (int)rc, API(_error)(h));
  }
  API(_unload)(h);
  return 0;
}
