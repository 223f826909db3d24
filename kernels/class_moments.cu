// Per-class sufficient statistics of penultimate features, accumulated batch by batch
// (the streaming scan's pass 1): counts (classes,), sums (classes, d) and outer-product
// sums (classes, d, d), all float64 so that millions of samples add up without drift.
// features (n, d) float32, labels (n,) int64.
//
// Each thread owns output cells that no other thread writes (one feature index a, or one
// pair (a, b), across all classes), so no atomics are needed; it loops over the batch.
// NumPy twin: pudrt.scores.moments.ClassMoments.add.

extern "C" __global__ void class_sums(const float* __restrict__ features, const long long* __restrict__ labels,
                                      double* __restrict__ counts, double* __restrict__ sums,
                                      int n, int d, int classes) {
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= d) return;
    for (int i = 0; i < n; ++i) {
        long long c = labels[i];
        if (c < 0 || c >= classes) continue;
        sums[c * d + a] += (double)features[(long long)i * d + a];
        if (a == 0) counts[c] += 1.0;
    }
}

extern "C" __global__ void class_outer_sums(const float* __restrict__ features, const long long* __restrict__ labels,
                                            double* __restrict__ outer, int n, int d, int classes) {
    long long cell = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (cell >= (long long)d * d) return;
    int a = (int)(cell / d), b = (int)(cell % d);
    for (int i = 0; i < n; ++i) {
        long long c = labels[i];
        if (c < 0 || c >= classes) continue;
        const float* f = features + (long long)i * d;
        outer[(c * d + a) * (long long)d + b] += (double)f[a] * (double)f[b];
    }
}
