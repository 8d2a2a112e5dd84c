/* being implemented */
#include "queue_fsm.h"
