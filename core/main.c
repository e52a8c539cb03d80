/*
** main.c -- the caremesh binary.
*/
#include "cli.h"
#include "store.h"

#include <sys/stat.h>

int main(int argc, char **argv)
{
    umask(077); /* everything this process creates is private to its user */
    cm_store_global_init();
    return cm_cli_main(argc, argv);
}
