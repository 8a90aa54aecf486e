/* A WASI command in C (wasi-libc): prints its arguments and exits with the status
 * given as its first argument, so the cluster's TASK_FAILED path can be seen. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int status = argc > 1 ? atoi(argv[1]) : 0;
    printf("exit.c: %d argument(s); exiting with status %d\n", argc - 1, status);
    fflush(stdout);
    return status;
}
