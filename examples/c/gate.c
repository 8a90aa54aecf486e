/* A WASI command in C that waits for a file to appear in its sandbox, then exits 0.
 * Tests use it to hold a task running for exactly as long as they need (an agent
 * restart, a master restart) and then let it finish. Usage: gate.wasm [FILE] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *dir = getenv("MESOS_SANDBOX");
    const char *name = argc > 1 ? argv[1] : "open";
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : ".", name);
    printf("gate.c: waiting for %s\n", path);
    fflush(stdout);
    struct timespec pause = {0, 20 * 1000 * 1000};
    while (access(path, F_OK) != 0) {
        nanosleep(&pause, NULL);
    }
    printf("gate.c: %s appeared; exiting\n", path);
    return 0;
}
