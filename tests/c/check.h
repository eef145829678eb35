/* The test programs' check: prints "ok <name>" when `cond` holds, else "FAIL …" with the
 * client's last error (the program's global `ml_client_t c`) and returns 1 from main. */
#ifndef TICKINFER_TEST_CHECK_H
#define TICKINFER_TEST_CHECK_H

#include <stdio.h>

#define CHECK(cond, name)                                                         \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "FAIL %s (line %d): %s\n", name, __LINE__, c.error);  \
            return 1;                                                             \
        }                                                                         \
        printf("ok %s\n", name);                                                  \
    } while (0)

#endif
