#ifndef DRAGONFLY_CLZ4_SHIM_H
#define DRAGONFLY_CLZ4_SHIM_H
#include <lz4.h>
#endif
