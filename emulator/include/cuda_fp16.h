// candle-norm's CPU emulator: `__half` and its conversions come from the shim.
#pragma once
#include "cn_emu.h"
