/* Loads a tilefuse bundle through its C API and reports what happened; built against the bundle's
 * NAME.c by tests/test_export.py with BUNDLE_H, PREFIX set on the command line. Exit 0 when every call
 * returned the code the test expects on this machine (no driver: CUDA_ERROR_NO_DEVICE), never a crash. */
#include <stdio.h>
#include <string.h>

#include BUNDLE_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define API(fn) CAT(PREFIX, fn)

int main(void) {
  char err[512] = "";
  CAT(PREFIX, _handle)* h = (CAT(PREFIX, _handle)*)1; /* must be reset to NULL on failure */
  const void* inputs[1] = {NULL};
  void* outputs[1] = {NULL};
  CUresult rc = API(_load)(NULL, &h, err, sizeof(err));
  printf("load=%d\nhandle_null=%d\nmessage=%s\n", (int)rc, h == NULL, err);
  printf("run_null=%d\n", (int)API(_run)(NULL, NULL, inputs, outputs, NULL));
  printf("load_null_out=%d\n", (int)API(_load)(NULL, NULL, NULL, 0));
  printf("unload_null=%d\n", (int)API(_unload)(NULL));
  printf("workspace=%zu\n", API(_workspace_bytes)());
  if (rc == CUDA_SUCCESS) API(_unload)(h);
  return 0;
}
