/*
 * bench/native/tick.c: the `tick` fixture (fixtures/apps/tick.c) as a Linux program,
 * for bench/gdb.py's baselines (stock gdb over ptrace, and gdbserver over TCP).
 * Same loop, same -O0 code shape: main calls tick() N times (argv[1], default 1000).
 */
#include <stdio.h>
#include <stdlib.h>

volatile unsigned long tick_count;

__attribute__((noinline)) void tick(void)
{
    tick_count++; /* TICK */
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;

    for (long i = 0; i < n; i++)
        tick();
    printf("tick_count=%lu\n", tick_count);
    return 0;
}
