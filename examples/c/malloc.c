/* A WASI command in C that allocates memory 1 MiB at a time, touching every byte,
 * until malloc fails; it then prints how many MiB it got to stderr and exits 1.
 * With a task's `mem` as the cap on its linear memory, it ends as a memory
 * limitation. Usage: malloc.wasm */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1024 * 1024)

int main(void) {
    /* Each block holds a pointer to the one before: blocks that are never read
     * again may be optimised away with their malloc, which would never fail. */
    void **last = NULL;
    unsigned long got = 0;
    for (;;) {
        void **block = malloc(MIB);
        if (block == NULL) {
            break;
        }
        memset(block, 0xa5, MIB);
        *block = last;
        last = block;
        got++;
    }
    unsigned long held = 0;
    for (void **b = last; b != NULL; b = *b) {
        held++;
    }
    fprintf(stderr, "malloc.c: malloc failed after %lu MiB (%lu held)\n", got, held);
    return 1;
}
