from common.cli import run

run(__package__)
