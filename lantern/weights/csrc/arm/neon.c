/* ARM64 NEON kernels: placeholder until they land; the level runs the generic table. */
#include "../lantern.h"

#ifdef LT_ARM64
void lt_fill_neon(lt_kernels *k) { (void)k; }
#endif
