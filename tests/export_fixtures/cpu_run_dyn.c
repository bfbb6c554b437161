/* Runs a tilefuse CPU bundle with one dynamic size through NAME_cpu_run_dyn, built by
 * tests/test_export_dynamic.py against libNAME_cpu.so with BUNDLE_H, PREFIX and UPPER set. Usage:
 *   cpu_run_dyn SIZE IN_0 .. IN_n-1 OUT_0:BYTES .. OUT_m-1:BYTES
 * reads each input into a 64-byte aligned buffer, runs the graph at sizes[0] = SIZE (the results go to
 * the output files) and prints what every call returned, one `key=value` a line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include BUNDLE_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define API(fn) CAT(PREFIX, fn)
#define NUM_INPUTS CAT(UPPER, _CPU_NUM_INPUTS)
#define NUM_OUTPUTS CAT(UPPER, _CPU_NUM_OUTPUTS)
#define NUM_SIZES CAT(UPPER, _CPU_NUM_SIZES)

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
  void* outputs[NUM_OUTPUTS];
  size_t bytes[NUM_OUTPUTS];
  int64_t sizes[NUM_SIZES];
  int64_t bad[NUM_SIZES];
  CAT(PREFIX, _cpu_handle)* h = NULL;
  int i, rc;
  if (argc != 2 + NUM_INPUTS + NUM_OUTPUTS || NUM_SIZES != 1) {
    fprintf(stderr, "usage: %s SIZE %d inputs %d outputs (one dynamic size)\n", argv[0], NUM_INPUTS, NUM_OUTPUTS);
    return 2;
  }
  sizes[0] = strtoll(argv[1], NULL, 10);
  for (i = 0; i < NUM_INPUTS; ++i) {
    inputs[i] = read_all(argv[2 + i]);
    if (inputs[i] == NULL) return 3;
  }
  for (i = 0; i < NUM_OUTPUTS; ++i) {
    char* colon = strrchr(argv[2 + NUM_INPUTS + i], ':');
    bytes[i] = (size_t)strtoull(colon + 1, NULL, 10);
    *colon = '\0';
    outputs[i] = aligned(bytes[i]);
  }
  printf("workspace=%zu\n", API(_cpu_workspace_bytes)());
  rc = API(_cpu_load)(1, &h, err, sizeof err);
  printf("load=%d\nload_message=%s\n", rc, err);
  if (rc != 0) return 0;
  printf("static_run=%d\nstatic_run_message=%s\n", API(_cpu_run)(h, inputs, outputs, NULL), API(_cpu_error)(h));
  printf("null_sizes=%d\n", API(_cpu_run_dyn)(h, NULL, inputs, outputs, NULL));
  bad[0] = 0;
  printf("below=%d\nbelow_message=%s\n", API(_cpu_run_dyn)(h, bad, inputs, outputs, NULL), API(_cpu_error)(h));
  bad[0] = 1 << 30;
  printf("above=%d\nabove_message=%s\n", API(_cpu_run_dyn)(h, bad, inputs, outputs, NULL), API(_cpu_error)(h));
  rc = API(_cpu_run_dyn)(h, sizes, inputs, outputs, NULL);
  printf("run=%d\nrun_message=%s\n", rc, API(_cpu_error)(h));
  for (i = 0; i < NUM_OUTPUTS; ++i) {
    FILE* f = fopen(argv[2 + NUM_INPUTS + i], "wb");
    if (f == NULL || fwrite(outputs[i], 1, bytes[i], f) != bytes[i]) return 4;
    fclose(f);
  }
  printf("unload=%d\n", API(_cpu_unload)(h));
  return 0;
}
