"""Writes TensorFlow's compile and link flags (from tf.sysconfig) as a CMake
include file at the path given, so nothing about TF is hard-coded."""

import sys

import tensorflow as tf


def cmake_list(items):
    return ";".join(item.replace(";", r"\;") for item in items)


def main():
    includes, definitions, other = [], [], []
    for flag in tf.sysconfig.get_compile_flags():
        if flag.startswith("-I"):
            includes.append(flag[2:])
        elif flag.startswith("-D"):
            definitions.append(flag[2:])
        elif not flag.startswith("--std=") and not flag.startswith("-std="):
            other.append(flag)
    link_dirs, link_libs = [], []
    for flag in tf.sysconfig.get_link_flags():
        if flag.startswith("-L"):
            link_dirs.append(flag[2:])
        elif flag.startswith("-l"):
            link_libs.append(flag)
    lines = [
        f'set(TF_INCLUDE_DIRS "{cmake_list(includes)}")',
        f'set(TF_DEFINITIONS "{cmake_list(definitions)}")',
        f'set(TF_OTHER_COMPILE_FLAGS "{cmake_list(other)}")',
        f'set(TF_LINK_DIRS "{cmake_list(link_dirs)}")',
        f'set(TF_LINK_LIBS "{cmake_list(link_libs)}")',
        f'set(TF_VERSION "{tf.__version__}")',
    ]
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
