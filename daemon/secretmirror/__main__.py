from secretmirror.cli import main

main()
