/* Runs a tilefuse CPU bundle through its C API, built by tests/test_export_cpu.py against libNAME_cpu.so
 * with BUNDLE_H, PREFIX and UPPER set on the command line. Usage:
 *   cpu_run THREADS IN_0 .. IN_n-1 OUT_0:BYTES .. OUT_m-1:BYTES
 * reads each input (raw bytes) into a 64-byte aligned buffer, runs the graph twice (the second run's results
 * are written to the output files) and prints what every call returned, one `key=value` a line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include BUNDLE_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define API(fn) CAT(PREFIX, fn)
#define NUM_INPUTS CAT(UPPER, _CPU_NUM_INPUTS)
#define NUM_OUTPUTS CAT(UPPER, _CPU_NUM_OUTPUTS)

static void* aligned(size_t size) { return aligned_alloc(64, (size + 63) / 64 * 64 + 64); }

static void* read_all(const char* path) {
  FILE* f = fopen(path, "rb");
  long size;
  void* data;
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  fseek(f, 0, SEEK_SET);
  data = aligned((size_t)size);
  if (data != NULL && fread(data, 1, (size_t)size, f) != (size_t)size) data = NULL;
  fclose(f);
  return data;
}

int main(int argc, char** argv) {
  char err[512] = "";
  const void* inputs[NUM_INPUTS];
  const void* shifted[NUM_INPUTS];
  void* outputs[NUM_OUTPUTS];
  size_t sizes[NUM_OUTPUTS];
  CAT(PREFIX, _cpu_handle)* h = NULL;
  int i, rc;
  if (argc != 2 + NUM_INPUTS + NUM_OUTPUTS) {
    fprintf(stderr, "usage: %s THREADS %d inputs %d outputs\n", argv[0], NUM_INPUTS, NUM_OUTPUTS);
    return 2;
  }
  for (i = 0; i < NUM_INPUTS; ++i) {
    inputs[i] = read_all(argv[2 + i]);
    if (inputs[i] == NULL) return 3;
    shifted[i] = (const char*)inputs[i];
  }
  for (i = 0; i < NUM_OUTPUTS; ++i) {
    char* colon = strrchr(argv[2 + NUM_INPUTS + i], ':');
    sizes[i] = (size_t)strtoull(colon + 1, NULL, 10);
    *colon = '\0';
    outputs[i] = aligned(sizes[i]);
  }
  printf("run_null_handle=%d\n", API(_cpu_run)(NULL, inputs, outputs, NULL));
  printf("load_null_out=%d\n", API(_cpu_load)(0, NULL, err, sizeof err));
  printf("unload_null=%d\n", API(_cpu_unload)(NULL));
  printf("workspace=%zu\n", API(_cpu_workspace_bytes)());
  rc = API(_cpu_load)(atoi(argv[1]), &h, err, sizeof err);
  printf("load=%d\nload_message=%s\n", rc, err);
  if (rc != 0) return 0;
  printf("threads=%d\n", API(_cpu_num_threads)(h));
  shifted[0] = (const char*)inputs[0] + 4; /* misaligned on purpose */
  printf("misaligned=%d\nmisaligned_message=%s\n", API(_cpu_run)(h, shifted, outputs, NULL), API(_cpu_error)(h));
  printf("null_input=%d\n", API(_cpu_run)(h, NULL, outputs, NULL));
  printf("run1=%d\n", API(_cpu_run)(h, inputs, outputs, NULL));
  rc = API(_cpu_run)(h, inputs, outputs, NULL);
  printf("run2=%d\nrun_message=%s\n", rc, API(_cpu_error)(h));
  for (i = 0; i < NUM_OUTPUTS; ++i) {
    FILE* f = fopen(argv[2 + NUM_INPUTS + i], "wb");
    if (f == NULL || fwrite(outputs[i], 1, sizes[i], f) != sizes[i]) return 4;
    fclose(f);
  }
  printf("unload=%d\n", API(_cpu_unload)(h));
  return 0;
}
