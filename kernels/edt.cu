// Exact Euclidean distance transform, separable passes (Felzenszwalb & Huttenlocher lower envelope).
// Loaded by cupy_backend.py with cupy.RawModule; same algorithm as edt_cuda.py / edt_numba.py.
// Volumes are C-ordered (Z, Y, X). Pass 1: one thread per row, two scans for the 1D distance to
// the nearest zero. Passes 2/3: one thread per column; scratch buffers are laid out (n, lines) so
// neighbouring threads touch neighbouring addresses.

#define F_INF __int_as_float(0x7f800000)
#define D_INF __longlong_as_double(0x7ff0000000000000LL)

extern "C" __global__ void edt_rows(const unsigned char* __restrict__ mask, float* __restrict__ out,
                                    int Z, int Y, int X, float sx) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (long long)Z * Y) return;
    const unsigned char* m = mask + r * X;
    float* o = out + r * X;
    int prev = -1;
    for (int x = 0; x < X; ++x) {
        if (m[x] == 0) { prev = x; o[x] = 0.0f; }
        else if (prev >= 0) { float d = (x - prev) * sx; o[x] = d * d; }
        else { o[x] = F_INF; }
    }
    int nxt = -1;
    for (int x = X - 1; x >= 0; --x) {
        if (m[x] == 0) { nxt = x; }
        else if (nxt >= 0) { float d = (nxt - x) * sx; if (d * d < o[x]) o[x] = d * d; }
    }
}

extern "C" __global__ void edt_cols(float* __restrict__ vol, int Z, int Y, int X, int axis, double s2,
                                    int final_pass, double* __restrict__ g, int* __restrict__ v,
                                    double* __restrict__ zb) {
    const int n = axis == 0 ? Z : Y;
    const long long lines = (long long)(axis == 0 ? Y : Z) * X;
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= lines) return;
    const long long o = t / X;
    const long long x = t - o * X;
    // element i of this line lives at base + i * step
    const long long base = axis == 0 ? o * X + x : o * (long long)Y * X + x;
    const long long step = axis == 0 ? (long long)Y * X : X;
    const double inv = 1.0 / s2;
    for (int i = 0; i < n; ++i) g[i * lines + t] = vol[base + i * step] * inv;
    int k = -1;
    for (int q = 0; q < n; ++q) {
        double gq = g[q * lines + t];
        if (gq == D_INF) continue;
        if (k < 0) {
            k = 0; v[t] = q; zb[t] = -D_INF; zb[lines + t] = D_INF;
            continue;
        }
        double fq = gq + (double)q * q;
        double s;
        while (true) {
            int vk = v[k * lines + t];
            s = (fq - (g[vk * lines + t] + (double)vk * vk)) / (2.0 * (q - vk));
            if (s <= zb[k * lines + t]) { --k; } else { break; }
        }
        ++k;
        v[k * lines + t] = q;
        zb[k * lines + t] = s;
        zb[(k + 1) * lines + t] = D_INF;
    }
    int kk = 0;
    for (int p = 0; p < n; ++p) {
        double res = D_INF;
        if (k >= 0) {
            while (zb[(kk + 1) * lines + t] < p) ++kk;
            int vk = v[kk * lines + t];
            double d = p - vk;
            res = (d * d + g[vk * lines + t]) * s2;
        }
        if (final_pass) res = sqrt(res);
        vol[base + p * step] = (float)res;
    }
}

extern "C" __global__ void edt_sqrt(float* a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = sqrtf(a[i]);
}

extern "C" __global__ void signed_combine(const unsigned char* __restrict__ mask, const float* __restrict__ d_in,
                                          const float* __restrict__ d_out, float* __restrict__ out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = mask[i] ? -d_in[i] : d_out[i];
}
