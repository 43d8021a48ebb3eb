/* AVX2 + FMA + F16C kernels (Haswell, Zen 1-3 and later x86-64): placeholder until the AVX2
 * kernels land; the level runs the generic table. */
#include "../lantern.h"

#ifdef LT_X86
void lt_fill_avx2(lt_kernels *k) { (void)k; }
#endif
