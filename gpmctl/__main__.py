from gpmctl.cli import main

main()
