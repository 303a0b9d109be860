// Euler characteristic by 2x2x2 configuration look-up (tables from euler_numba.euler_lut, which
// hold 8 * chi contributions). Block origins run from -1 to size-1 on each axis: the volume is
// padded with background virtually, without allocating a padded copy. Grid-stride loop, shared
// memory reduction, one 64-bit atomic per thread block (two's complement makes the unsigned add
// exact for signed sums).

#define THREADS 128

extern "C" __global__ void euler_lut_sum(const unsigned char* __restrict__ mask, int Z, int Y, int X,
                                         const long long* __restrict__ lut, unsigned long long* acc) {
    __shared__ long long part[THREADS];
    long long nblk = (long long)(Z + 1) * (Y + 1) * (X + 1);
    long long local = 0;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < nblk;
         t += (long long)gridDim.x * blockDim.x) {
        int x0 = (int)(t % (X + 1)) - 1;
        long long r = t / (X + 1);
        int y0 = (int)(r % (Y + 1)) - 1;
        int z0 = (int)(r / (Y + 1)) - 1;
        int idx = 0;
        for (int dz = 0; dz < 2; ++dz) {
            int z = z0 + dz;
            if (z < 0 || z >= Z) continue;
            for (int dy = 0; dy < 2; ++dy) {
                int y = y0 + dy;
                if (y < 0 || y >= Y) continue;
                for (int dx = 0; dx < 2; ++dx) {
                    int x = x0 + dx;
                    if (x >= 0 && x < X && mask[((long long)z * Y + y) * X + x]) idx |= 1 << (dx * 4 + dz * 2 + dy);
                }
            }
        }
        local += lut[idx];
    }
    part[threadIdx.x] = local;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(acc, (unsigned long long)part[0]);
}
