/* The compute controller alone against a simulated GPU (no driver): for SM counts 20-200, targets
 * 25/50/75 % and kernels whose cost per token spans three orders of magnitude, a saturating
 * workload is throttled by the token bucket; utilisation is measured with one tick of lag and
 * +-1 pp noise, as NVML reports it. Prints, per case, the ticks until utilisation stays within
 * 5 pp of the target for 10 ticks (or -1). */
#include <stdio.h>

#include "limiter.h"

int main(void)
{
    static const int sms[] = {20, 46, 80, 108, 132, 170, 200};
    static const int tps[] = {2048, 1536};
    static const double targets[] = {25, 50, 75};
    static const double cost[] = {0.01, 0.1, 1, 10}; /* busy ns per token per SM */
    const double tick = 0.1;
    int worst = 0, failures = 0, cases = 0;
    unsigned noise = 12345;
    for (size_t a = 0; a < sizeof(sms) / sizeof(sms[0]); a++)
        for (size_t b = 0; b < sizeof(tps) / sizeof(tps[0]); b++)
            for (size_t c = 0; c < sizeof(targets) / sizeof(targets[0]); c++)
                for (size_t d = 0; d < sizeof(cost) / sizeof(cost[0]); d++) {
                    double rate = 1.0, measured = 0, prev_u = 0;
                    int stable = 0, converged = -1;
                    for (int k = 0; k < 200 && converged < 0; k++) {
                        double tokens = (double)hami_ctl_refill(rate, sms[a], tps[b], tick);
                        double busy_ns = tokens * cost[d] / sms[a];
                        double u = busy_ns / (tick * 1e9) * 100;
                        int saturated = u < 100; /* the GPU keeps up: the bucket is the limit */
                        if (u > 100)
                            u = 100;
                        noise = noise * 1103515245u + 12345u;
                        measured = prev_u + ((double)(noise >> 16 & 0xff) / 255.0 * 2 - 1);
                        prev_u = u;
                        rate = hami_ctl_step(rate, targets[c], measured, saturated);
                        if (u >= targets[c] - 5 && u <= targets[c] + 5) {
                            if (++stable == 10)
                                converged = k - 9;
                        } else {
                            stable = 0;
                        }
                    }
                    cases++;
                    printf("case sms=%d tps=%d target=%.0f cost=%g ticks=%d\n", sms[a], tps[b],
                           targets[c], cost[d], converged);
                    if (converged < 0)
                        failures++;
                    else if (converged > worst)
                        worst = converged;
                }
    printf("cases=%d\nfailures=%d\nworst_ticks=%d\n", cases, failures, worst);
    return failures != 0;
}
