/* A WASI command in C that sleeps for the number of seconds given (default 3600),
 * then exits 0: an idle task, for measuring how many an agent holds at once.
 * Usage: sleep.wasm [SECONDS] */
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    unsigned seconds = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 3600;
    sleep(seconds);
    return 0;
}
