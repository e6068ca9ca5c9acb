// Shared by every 2:4 kernel file (internal linkage: each file has its own ISA flags).
#pragma once
#include <algorithm>
#include <bit>
#include <cstdint>

#include "../kernel_common.h"
#include "sparseinfer/scratch.h"
#include "sparseinfer/sparse24_linear.h"
