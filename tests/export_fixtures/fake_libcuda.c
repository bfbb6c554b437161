/* TEST DOUBLE of the CUDA driver (libcuda.so.1), built by tests/test_export_gpu_dynamic.py into a temporary
 * directory as libcuda.so.1 and put first on LD_LIBRARY_PATH, so that a bundle's C launcher and its Python
 * loader can be checked on a machine without a GPU. It RUNS NO KERNEL: it implements the entry points the
 * launchers call, keeps "device memory" in host memory, and writes every module load and launch to the
 * file named by $FAKE_CUDA_LOG, one line each:
 *   load image=<FNV-1a 64 of the cubin (its ELF size) or PTX (up to its NUL), hex> kind=cubin|ptx
 *   launch fn=<name> image=<hex> grid=X,Y,Z block=X shared=N args=A0,A1,...
 *   memset ptr=<hex> bytes=N
 * A launch's parameters are read with the sizes $FAKE_CUDA_PARAMS gives per function
 * ("fn=8,8,4,8,8;fn2=..." from the kernels' PTX .param lists; 4-byte ones read as int32) and printed in
 * decimal. $FAKE_CUDA_CC is the compute capability it reports (default 90). What the test checks is the
 * launchers' arithmetic (bucket, cubin, grid, arguments), not the kernels. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef struct fake_function {
  char name[128];
  uint64_t image;
} fake_function;

static FILE* fake_log(void) {
  static FILE* f = NULL;
  if (f == NULL) {
    const char* path = getenv("FAKE_CUDA_LOG");
    f = fopen(path ? path : "/dev/null", "a");
    setvbuf(f, NULL, _IOLBF, 0);
  }
  return f;
}

static uint64_t fnv(const unsigned char* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  size_t i;
  for (i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

/* ELF64 image size: where its section or program header table ends, whichever is last (cubins end so) */
static size_t elf_size(const unsigned char* p) {
  uint64_t shoff, phoff;
  uint16_t phentsize, phnum, shentsize, shnum;
  memcpy(&phoff, p + 0x20, 8);
  memcpy(&shoff, p + 0x28, 8);
  memcpy(&phentsize, p + 0x36, 2);
  memcpy(&phnum, p + 0x38, 2);
  memcpy(&shentsize, p + 0x3a, 2);
  memcpy(&shnum, p + 0x3c, 2);
  shoff += (uint64_t)shentsize * shnum;
  phoff += (uint64_t)phentsize * phnum;
  return (size_t)(shoff > phoff ? shoff : phoff);
}

/* the parameter sizes of `fn` from $FAKE_CUDA_PARAMS; their count, or -1 when it is not listed */
static int param_sizes(const char* fn, int sizes[64]) {
  const char* spec = getenv("FAKE_CUDA_PARAMS");
  size_t len = strlen(fn);
  int n = 0;
  while (spec != NULL && *spec) {
    if (strncmp(spec, fn, len) == 0 && spec[len] == '=') {
      const char* p = spec + len + 1;
      while (*p && *p != ';' && n < 64) {
        sizes[n++] = (int)strtol(p, (char**)&p, 10);
        if (*p == ',') ++p;
      }
      return n;
    }
    spec = strchr(spec, ';');
    if (spec) ++spec;
  }
  return -1;
}

CUresult cuInit(unsigned flags) { (void)flags; return 0; }
CUresult cuDeviceGet(int* dev, int ordinal) { *dev = ordinal; return 0; }
CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) { (void)dev; *ctx = (void*)0xc0; return 0; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = (void*)0xc0; return 0; }
CUresult cuCtxPushCurrent_v2(void* ctx) { (void)ctx; return 0; }
CUresult cuCtxPopCurrent_v2(void** ctx) { if (ctx) *ctx = (void*)0xc0; return 0; }
CUresult cuCtxGetDevice(int* dev) { *dev = 0; return 0; }
CUresult cuPointerGetAttribute(void* data, int attr, uint64_t ptr) { (void)attr, (void)ptr; *(int*)data = 0; return 0; }

CUresult cuDeviceGetAttribute(int* value, int attr, int dev) {
  const char* cc = getenv("FAKE_CUDA_CC");
  int v = cc ? atoi(cc) : 90;
  (void)dev;
  *value = attr == 75 ? v / 10 : v % 10; /* 75, 76: compute capability major, minor */
  return 0;
}

CUresult cuModuleLoadData(void** module, const void* image) {
  const unsigned char* p = (const unsigned char*)image;
  int cubin = memcmp(p, "\177ELF", 4) == 0;
  uint64_t h = fnv(p, cubin ? elf_size(p) : strlen((const char*)p));
  uint64_t* m = (uint64_t*)malloc(sizeof(uint64_t));
  *m = h;
  *module = m;
  fprintf(fake_log(), "load image=%016llx kind=%s\n", (unsigned long long)h, cubin ? "cubin" : "ptx");
  return 0;
}

CUresult cuModuleGetFunction(void** fn, void* module, const char* name) {
  fake_function* f = (fake_function*)calloc(1, sizeof(fake_function));
  snprintf(f->name, sizeof(f->name), "%s", name);
  f->image = *(uint64_t*)module;
  *fn = f;
  return 0;
}

CUresult cuModuleUnload(void* module) { free(module); return 0; }
CUresult cuFuncSetAttribute(void* fn, int attr, int value) { (void)fn, (void)attr, (void)value; return 0; }
CUresult cuMemAlloc_v2(uint64_t* ptr, size_t bytes) { *ptr = (uint64_t)(uintptr_t)malloc(bytes); return 0; }
CUresult cuMemFree_v2(uint64_t ptr) { free((void*)(uintptr_t)ptr); return 0; }
CUresult cuMemcpyHtoD_v2(uint64_t dst, const void* src, size_t n) { memcpy((void*)(uintptr_t)dst, src, n); return 0; }

CUresult cuMemsetD8Async(uint64_t ptr, unsigned char v, size_t n, void* stream) {
  (void)v, (void)stream;
  fprintf(fake_log(), "memset ptr=%llx bytes=%zu\n", (unsigned long long)ptr, n);
  return 0;
}

static CUresult fake_launch(fake_function* f, const unsigned grid[3], unsigned block, unsigned shared, void** params) {
  int sizes[64], n = param_sizes(f->name, sizes), i;
  FILE* log = fake_log();
  if (n < 0) return 500; /* CUDA_ERROR_NOT_FOUND: the test gave no parameter list for this function */
  fprintf(log, "launch fn=%s image=%016llx grid=%u,%u,%u block=%u shared=%u args=", f->name,
          (unsigned long long)f->image, grid[0], grid[1], grid[2], block, shared);
  for (i = 0; i < n; ++i) {
    long long v = sizes[i] == 4 ? (long long)*(int32_t*)params[i] : (long long)*(uint64_t*)params[i];
    fprintf(log, i ? ",%lld" : "%lld", v);
  }
  fprintf(log, "\n");
  return 0;
}

/* CUlaunchConfig's head as cuda.h lays it out: grid x, y, z, block x, y, z, shared bytes, stream */
typedef struct {
  unsigned grid[3];
  unsigned block[3];
  unsigned shared;
  void* stream;
} fake_launch_config;

CUresult cuLaunchKernelEx(const fake_launch_config* c, void* fn, void** params, void** extra) {
  (void)extra;
  return fake_launch((fake_function*)fn, c->grid, c->block[0], c->shared, params);
}

CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* stream, void** params, void** extra) {
  unsigned grid[3] = {gx, gy, gz};
  (void)by, (void)bz, (void)stream, (void)extra;
  return fake_launch((fake_function*)fn, grid, bx, shared, params);
}
