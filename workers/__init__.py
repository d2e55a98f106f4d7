"""RQ job functions of embcache."""
