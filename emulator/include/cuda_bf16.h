// candle-norm's CPU emulator: `__nv_bfloat16` and its conversions come from the shim.
#pragma once
#include "cn_emu.h"
