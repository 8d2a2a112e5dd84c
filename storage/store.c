/* being implemented */
#include "store.h"
