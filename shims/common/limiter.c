/* Compute-limiter controller (see limiter.h). Pure functions, no state. */
#include "limiter.h"

#include <math.h>

double hami_ctl_step(double rate, double target, double measured, int saturated)
{
    if (!(rate > 0))
        rate = 1.0;
    if (target <= 0 || target >= 100)
        return rate;
    if (measured < 1.0)
        measured = 1.0;
    double ratio = target / measured;
    /* An application that does not use its tokens gives no information about the plant's gain:
     * never raise the rate then, or a burst after an idle phase would overshoot. */
    if (ratio > 1.0 && !saturated)
        return rate;
    if (ratio > 4.0)
        ratio = 4.0;
    if (ratio < 0.25)
        ratio = 0.25;
    double next = rate * pow(ratio, HAMI_CTL_GAIN);
    if (next < HAMI_CTL_MIN_RATE)
        next = HAMI_CTL_MIN_RATE;
    if (next > HAMI_CTL_MAX_RATE)
        next = HAMI_CTL_MAX_RATE;
    return next;
}

int64_t hami_ctl_refill(double rate, int sms, int threads_per_sm, double tick_s)
{
    double t = rate * (double)sms * (double)threads_per_sm * tick_s * HAMI_CTL_TOKENS_PER_SLOT_S;
    if (t > 9e18)
        t = 9e18;
    return (int64_t)t;
}
