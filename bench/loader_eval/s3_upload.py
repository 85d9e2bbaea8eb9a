"""Upload data/energon/{pairs,images,text} and data/mds/* to s3://scratch14/ (endpoint from AWS_* env)."""
import s3fs, sys
fs = s3fs.S3FileSystem(skip_instance_cache=True)
for local, remote in [("data/energon/pairs", "scratch14/energon/pairs"), ("data/energon/images", "scratch14/energon/images"),
                      ("data/energon/text", "scratch14/energon/text"), ("data/mds", "scratch14/mds")]:
    if fs.exists(remote):
        fs.rm(remote, recursive=True)
    fs.put(local + "/", remote, recursive=True)
print(sorted(fs.find("scratch14/energon/pairs"))[:6], len(fs.find("scratch14/energon/pairs")), "objects under energon/pairs")
print(len(fs.find("scratch14/mds")), "objects under mds; hidden .nv-meta present:", fs.exists("scratch14/energon/pairs/.nv-meta/.info.json"))
