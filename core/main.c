/*
** main.c -- the caremesh binary.
*/
#include "cli.h"

#include <sys/stat.h>

int main(int argc, char **argv)
{
    umask(077); /* everything this process creates is private to its user */
    return cm_cli_main(argc, argv);
}
