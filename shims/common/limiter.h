/* Compute limiter: a feedback controller that sets the refill rate of a container-wide token bucket
 * per device (shim-contract.md 8, 13 item 11).
 *
 * The controller works on the ratio target/measured in the log domain (multiplicative integral
 * action): for a plant whose utilisation is proportional to the refill rate, the log error shrinks
 * by (1 - gain) per tick whatever the kernels' cost-per-token is, so one gain serves every GPU. The
 * tokens added per tick are rate x SMs x threads per SM x tick: linear in SM count (HAMi-core's
 * step grows with SM^2, HAMi-core#274). Launch cost = blocks x threads per block.
 */
#ifndef HAMI_LIMITER_H
#define HAMI_LIMITER_H

#include <stdint.h>

#define HAMI_CTL_GAIN 0.5
#define HAMI_CTL_MIN_RATE 1e-9
#define HAMI_CTL_MAX_RATE 1e4
#define HAMI_CTL_TOKENS_PER_SLOT_S 1.0e5 /* tokens per (SM thread slot x second) at rate 1 */

/* One controller tick. `rate` is the current rate, `target` and `measured` are percentages,
 * `saturated` says whether the bucket ran dry during the tick (demand exceeded supply). Returns
 * the new rate. */
double hami_ctl_step(double rate, double target, double measured, int saturated);

/* Tokens to add for one tick of `tick_s` seconds on a device with `sms` x `threads_per_sm`. */
int64_t hami_ctl_refill(double rate, int sms, int threads_per_sm, double tick_s);

#endif
