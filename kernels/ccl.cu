// Connected-component labelling on the GPU: union-find with atomicMin linking (Playne & Hawick).
// Loaded by cupy_backend.py with cupy.RawModule; same steps as ccl_cuda.py, which is tested under
// the numba CUDA simulator:
//   ccl_init -> ccl_merge (union with each foreground backward neighbour) -> ccl_flatten ->
//   ccl_chunk_count -> ccl_scan (one thread, over chunks) -> ccl_assign -> ccl_finish.
// Roots are always the smallest index of their tree, so the final numbering is the raster order
// of each component's first voxel (scipy.ndimage.label's numbering).

#define CHUNK 1024

__device__ __forceinline__ int uf_find(const int* L, int i) {
    int p = L[i];
    while (p != i) { i = p; p = L[i]; }
    return i;
}

__device__ void uf_union(int* L, int a, int b) {
    bool done = false;
    while (!done) {
        a = uf_find(L, a);
        b = uf_find(L, b);
        if (a < b) { int old = atomicMin(&L[b], a); done = old == b; b = old; }
        else if (b < a) { int old = atomicMin(&L[a], b); done = old == a; a = old; }
        else { done = true; }
    }
}

__device__ __forceinline__ bool is_fg(const unsigned char* mask, long long i, int invert) {
    return (mask[i] != 0) != (invert != 0);
}

extern "C" __global__ void ccl_init(const unsigned char* __restrict__ mask, int invert, int* __restrict__ L,
                                    long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) L[i] = is_fg(mask, i, invert) ? (int)i : -1;
}

extern "C" __global__ void ccl_merge(const unsigned char* __restrict__ mask, int Z, int Y, int X, int invert,
                                     const int* __restrict__ back, int nback, int* L) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)Z * Y * X || L[i] < 0) return;
    int x = (int)(i % X);
    long long r = i / X;
    int y = (int)(r % Y);
    int z = (int)(r / Y);
    for (int k = 0; k < nback; ++k) {
        int zz = z + back[3 * k], yy = y + back[3 * k + 1], xx = x + back[3 * k + 2];
        if (zz < 0 || yy < 0 || yy >= Y || xx < 0 || xx >= X) continue;
        long long j = ((long long)zz * Y + yy) * X + xx;
        if (is_fg(mask, j, invert)) uf_union(L, (int)i, (int)j);
    }
}

extern "C" __global__ void ccl_flatten(int* L, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && L[i] >= 0) L[i] = uf_find(L, (int)i);
}

extern "C" __global__ void ccl_chunk_count(const int* __restrict__ L, long long n, int* __restrict__ counts) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long start = c * CHUNK;
    if (start >= n) return;
    long long end = start + CHUNK < n ? start + CHUNK : n;
    int cnt = 0;
    for (long long i = start; i < end; ++i) cnt += L[i] == i;
    counts[c] = cnt;
}

extern "C" __global__ void ccl_scan(const int* __restrict__ counts, long long nchunks, int* __restrict__ offsets) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int acc = 0;
    for (long long c = 0; c < nchunks; ++c) { offsets[c] = acc; acc += counts[c]; }
    offsets[nchunks] = acc;
}

extern "C" __global__ void ccl_assign(const int* __restrict__ L, long long n, const int* __restrict__ offsets,
                                      int* __restrict__ out) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long start = c * CHUNK;
    if (start >= n) return;
    long long end = start + CHUNK < n ? start + CHUNK : n;
    int lab = offsets[c];
    for (long long i = start; i < end; ++i) if (L[i] == i) out[i] = ++lab;
}

extern "C" __global__ void ccl_finish(const int* __restrict__ L, long long n, int* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int p = L[i];
    if (p < 0) out[i] = 0;
    else if (p != i) out[i] = out[p];
}

// Marks labels that touch the border; planar (2D input seen as one slice) ignores the z faces.
extern "C" __global__ void ccl_border(const int* __restrict__ labels, int Z, int Y, int X, int planar,
                                      int* __restrict__ touching) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)Z * Y * X) return;
    int lab = labels[i];
    if (lab == 0) return;
    int x = (int)(i % X);
    long long r = i / X;
    int y = (int)(r % Y);
    int z = (int)(r / Y);
    bool on = x == 0 || x == X - 1 || y == 0 || y == Y - 1 || (!planar && (z == 0 || z == Z - 1));
    if (on) touching[lab] = 1;
}

extern "C" __global__ void count_nonzero(const int* __restrict__ a, long long n, unsigned long long* acc) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && a[i] != 0) atomicAdd(acc, 1ULL);
}
